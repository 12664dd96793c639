"""Learning analytics: ClickHouse schema and migrations, the Kafka→ClickHouse sink, shared
access to the embedded chdb engine, canned reports and plots."""
