"""``python -m streams.cli``: the ``streamsearch`` command (the supervisor starts stage processes so)."""

from streams.cli import main

if __name__ == "__main__":
    main()
