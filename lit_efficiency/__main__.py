"""``python -m lit_efficiency`` is the ``lit-efficiency`` command."""

from lit_efficiency.cli import main

if __name__ == "__main__":
    main()
