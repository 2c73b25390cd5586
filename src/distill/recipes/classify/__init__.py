"""`distill run`: teacher → baseline and distilled student → validation → report."""
