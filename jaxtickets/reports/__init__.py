"""A run's and a study's evidence as files: report.md and study.md, and their figures."""
