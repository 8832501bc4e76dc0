"""The reports app's pages (views, forms, urls)."""
