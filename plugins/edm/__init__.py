"""EDM networks (SongUNet, DhariwalUNet) with safe checkpoint loading (entry point ``edm``)."""
