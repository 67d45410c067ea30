"""``python -m daemon``: the same as the ``sentinel`` command."""

from daemon.cli import main

raise SystemExit(main())
