"""Views of runs for people: replay and compare of recorded runs, and the live view of a running one."""
