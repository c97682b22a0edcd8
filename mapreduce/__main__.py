from mapreduce.cli import main

main()
