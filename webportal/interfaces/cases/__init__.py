"""The cases app's pages (views, forms, urls)."""
