from .main import cli

if __name__ == "__main__":  # spawned worker slots re-import this module as __mp_main__
    cli(prog_name="gpufleet")
