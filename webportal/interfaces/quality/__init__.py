"""The quality app's pages (views, forms, urls)."""
