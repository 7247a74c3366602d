"""The rubric service: `POST /rubrics`, schema-guaranteed generation with a persistent store."""
