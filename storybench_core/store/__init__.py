"""Storage behind one protocol (base.Store): SQLite by default, MongoDB when configured."""
