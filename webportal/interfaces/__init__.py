"""The top layer of the portal: pages, forms, URLs and middleware (one sub-package per app) and
the REST API's views and serializers (interfaces/api). Thin: they read through selectors and
write through services; an ApplicationError becomes an HTTP answer in one place per interface
(interfaces/api/errors.py for the API). Models, services and selectors stay in their apps."""
