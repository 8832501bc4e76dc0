"""python -m ml.locate: see ml/locate/cli.py."""

from ml.locate.cli import main

raise SystemExit(main())
