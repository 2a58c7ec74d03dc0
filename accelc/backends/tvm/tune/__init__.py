"""MetaSchedule tuning: the driver, the record database and RPC boards."""
