"""Examples of real tasks served through gpufleet (not part of the installed package)."""
