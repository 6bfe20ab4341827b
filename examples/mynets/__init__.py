"""An example of a user's own package for gradlab: one model, one data set (see ../README.md)."""
