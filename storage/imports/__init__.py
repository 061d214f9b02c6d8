"""`tollbooth usage import`: files of past usage read, checked and written once."""
