from django.urls import path

from webportal.interfaces.cases import field_views, review_views, views

app_name = "cases"

urlpatterns = [
    path("cases/", views.case_list, name="case_list"),
    path("cases/<int:case_id>/", views.case_detail, name="case_detail"),
    path("batches/<int:batch_id>/", views.batch_detail, name="batch_detail"),
    path("batches/<int:batch_id>/status.json", views.batch_status, name="batch_status"),
    path("batches/<int:batch_id>/cancel/", views.batch_cancel, name="batch_cancel"),
    path("batches/<int:batch_id>/confirm/", views.batch_confirm, name="batch_confirm"),
    path("images/<int:image_id>/", views.image_file, name="image_file"),
    path("batches/<int:batch_id>/review/", review_views.review, name="review"),
    path("batches/<int:batch_id>/review/reclassify", review_views.reclassify, name="reclassify"),
    path("cells/<int:cell_id>/", review_views.cell_detail, name="cell"),
    path("cells/<int:cell_id>/crop.png", review_views.cell_crop, name="cell_crop"),
    path("cells/<int:cell_id>/heatmap.png", review_views.cell_heatmap, name="cell_heatmap"),
    path("images/<int:image_id>/field/", field_views.field_detail, name="field_detail"),
]
