"""Running existing AWS Lambda stream handlers unchanged: events, context, responses, filters."""
