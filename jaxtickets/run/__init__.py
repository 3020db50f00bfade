"""The protocol run: rounds and branches (imp), the order of the trainings (schedule), packs of runs trained side by
side (pack), TensorBoard, preemption."""
