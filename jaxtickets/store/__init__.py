"""What a run keeps on disk (or gs://): the names of a workdir's files, and its Orbax tickets, weights and train
states."""
