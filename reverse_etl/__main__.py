from reverse_etl.cli import main

main()
