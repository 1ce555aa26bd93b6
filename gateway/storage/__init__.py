"""State: schema and migrations, the state store (SQLite or PostgreSQL), the prediction sink and its writer."""
