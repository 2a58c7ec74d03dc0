"""Recipe schema (pydantic), YAML positions and target descriptions: what the user asked for."""
