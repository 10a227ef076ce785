"""bp-monitor's library: schema, parsing, classification, sinks, trends and configuration."""
