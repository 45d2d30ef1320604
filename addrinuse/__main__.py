from addrinuse.cli import main

main()
