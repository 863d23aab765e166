"""kg-builder: AutoSchemaKG — triples, an induced schema, and the platform's memory of failures."""
