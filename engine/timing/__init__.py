"""The CPU vs GPU timing lab, its report format, and machine facts."""
