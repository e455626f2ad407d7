from bsud.cli import main

raise SystemExit(main())
