from shortener.cli import main

raise SystemExit(main())
