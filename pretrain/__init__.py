"""pretrain layer (see DESIGN §1)."""
