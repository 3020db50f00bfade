"""A run's numbers: the tables rebuilt from its tickets, the statistics behind every interval and verdict, and the
verdicts in words."""
