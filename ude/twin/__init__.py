"""The twin: a finished run's symbolic model with its fitted values, the product's noun."""
