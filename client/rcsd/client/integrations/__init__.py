"""rcsd's teacher inside other training frameworks (no framework imported here: duck-typed seams)."""
