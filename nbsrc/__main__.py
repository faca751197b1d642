from nbsrc.cli import main

raise SystemExit(main())
