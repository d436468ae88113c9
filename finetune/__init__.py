"""finetune layer (see DESIGN §1)."""
