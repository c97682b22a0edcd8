#!/bin/sh
# A stand-in for ssh in tests: ignores the host and runs the command string on this machine.
# Host "unreachable" fails at once, as ssh does when it cannot connect; host "silent" never answers.
host=$1
shift
case "$host" in
  unreachable) echo "ssh: connect to host unreachable port 22: No route to host" >&2; exit 255 ;;
  silent) exec sleep 60 ;;
esac
exec sh -c "$*"
