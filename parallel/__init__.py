"""parallel layer (see DESIGN §1)."""
