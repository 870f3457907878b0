"""The producer stage: directories -> a job and its image rows in the DB -> batches of paths on Redis."""
