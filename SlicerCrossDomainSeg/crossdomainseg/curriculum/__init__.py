"""Background fine-tuning on the target domain: the patent's uncertainty-guided teacher-student
curriculum (Fig. 4, eq. 1-4), run in its own low-priority OS process (`process.py`)."""
