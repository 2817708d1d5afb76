// Swagger UI over this server's OpenAPI schema (loaded from /docs/assets, never from a CDN).
"use strict";
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
