"""onedotzero: build, serve and boot the OS of a small bare-metal inference cluster."""
