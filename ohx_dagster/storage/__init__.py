"""The record store: schema and migrations, series chunks, the tables of records, coverage and
people."""
