from reverse_etl.entry import main

main()
