from .main import main

if __name__ == "__main__":  # spawned worker slots re-import this module as __mp_main__
    main()
