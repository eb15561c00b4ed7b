"""gpufleet's command line: click commands that parse, call dispatcher/ or worker/, and print."""
