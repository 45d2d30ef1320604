from addrinuse.entry import main

main()
