from imgbatch.cli.app import main

main()
