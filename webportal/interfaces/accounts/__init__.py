"""The accounts app's pages (views, forms, urls)."""
