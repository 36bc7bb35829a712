"""Data files of the classify engine (see README.md); a package so installs ship them."""
