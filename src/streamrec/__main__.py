from streamrec.launch import main

main()
